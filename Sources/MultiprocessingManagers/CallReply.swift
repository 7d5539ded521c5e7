/// What a manager server answered a request with, when it answered with a result: a value (`#RETURN`),
/// or a new served object (`#PROXY`, Python's `method_to_typeid`) to which a proxy is made. The other
/// replies (`#ERROR`, `#TRACEBACK`, `#UNSERIALIZABLE`) are errors.
enum CallReply {
    /// `#RETURN`: the call's value.
    case value(PythonValue)
    /// `#PROXY`: the result is served as a new object, with one reference held for the caller.
    case proxy(ServedToken)

    /// A reply as the server pickled it — `(kind, value)` — as a result, or the error it carries (a
    /// ``PythonException``, a ``ManagerError``).
    static func parse(_ reply: PythonValue) -> Result<CallReply, any Error> {
        guard let parts = reply.items, parts.count == 2, case .string(let kind) = parts[0] else {
            return .failure(
                ManagerError(.protocolViolation, "a reply that is not (kind, value): \(reply.pythonDescription)")
            )
        }
        switch kind {
        case "#RETURN": return .success(.value(parts[1]))
        case "#ERROR":
            if case .object(let o) = parts[1], let (module, name) = o.type {
                return .failure(
                    PythonException(module: module == "queue" && name == "Empty" ? "_queue" : module, name, o.args)
                )
            }
            return .failure(ManagerError(.remoteError, "error \(parts[1].pythonDescription)"))
        case "#TRACEBACK":
            return .failure(ManagerError(.remoteTraceback, parts[1].stringValue ?? "\(parts[1])"))
        case "#UNSERIALIZABLE":
            return .failure(ManagerError(.unserializable, parts[1].stringValue ?? "\(parts[1])"))
        case "#PROXY":
            guard let token = ServedToken(parts[1]) else {
                return .failure(
                    ManagerError(
                        .protocolViolation,
                        "a #PROXY reply that is not (exposed, Token): \(parts[1].pythonDescription)"
                    )
                )
            }
            return .success(.proxy(token))
        default: return .failure(ManagerError(.protocolViolation, "unknown reply kind \(kind)"))
        }
    }

    /// The value of a request that cannot answer with a new object (a one-shot request, a queue's `put`
    /// or `get`): a `#PROXY` reply is a protocol violation.
    var value: PythonValue {
        get throws(ManagerError) {
            switch self {
            case .value(let v): return v
            case .proxy(let t):
                throw ManagerError(
                    .protocolViolation,
                    "a #PROXY reply (a \(t.typeid)) to a request that returns a value"
                )
            }
        }
    }
}

/// An object the server made for a `#PROXY` reply: its typeid, ident and exposed methods (CPython's
/// `Token` and `exposed`).
struct ServedToken {
    let typeid: String
    let ident: String
    let exposed: [String]

    /// The value of a `#PROXY` reply, `(exposed, Token)`, the token pickled with its state
    /// `(typeid, address, id)`; nil when it is not that.
    init?(_ value: PythonValue) {
        guard let parts = value.items, parts.count == 2, let exposed = parts[0].items,
            case .object(let token) = parts[1], let fields = token.state?.items, fields.count == 3,
            let typeid = fields[0].stringValue, let ident = fields[2].stringValue
        else { return nil }
        self.typeid = typeid
        self.ident = ident
        self.exposed = exposed.compactMap(\.stringValue)
    }
}

extension ManagerError {
    /// `method` was answered with a new served object where a value was asked for.
    static func proxyReturned(_ method: String, _ token: ServedToken) -> ManagerError {
        ManagerError(.proxyReturned, "\(method) returns a proxy (a \(token.typeid)); call it with callProxy")
    }
}
