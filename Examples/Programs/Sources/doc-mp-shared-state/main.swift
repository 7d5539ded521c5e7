import Multiprocessing

struct F: Job {                              // Python: def f(n, a): ...
    let n: SharedValue<Double>
    let a: SharedArray<Int32>
    func run() {
        n.value = 3.1415927
        for i in a.indices { a[i] = -a[i] }
    }
}
bootstrap()
let num = try SharedValue<Double>(0.0)                  // Value('d', 0.0)
let arr = try SharedArray<Int32>((0..<10).map(Int32.init))  // Array('i', range(10))
let p = ChildProcess(job: F(n: num, a: arr))
try p.start(); try p.join()
print(num.value)          // 3.1415927
print(arr.toArray())      // [0, -1, -2, -3, -4, -5, -6, -7, -8, -9]
