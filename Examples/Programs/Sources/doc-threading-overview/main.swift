import Threading

func expensive() -> Int { (1...1_000_000).reduce(0, &+) }
let pool = ThreadPool(maxWorkers: 4)
let f = try pool.submit { expensive() }
print(try f.result(timeout: .seconds(2)))
