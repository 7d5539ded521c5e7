import Threading

try await CooperativeExecutor.run { loop in
    let foo = loop.spawn {
        print("Running in foo")
        await Task.yield()                       // gevent.sleep(0)
        print("Explicit context switch to foo again")
    }
    let bar = loop.spawn {
        print("Explicit context to bar")
        await Task.yield()
        print("Implicit context switch back to bar")
    }
    try await foo.value
    try await bar.value
}
