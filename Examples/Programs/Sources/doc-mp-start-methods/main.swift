// main.swift
import Multiprocessing

let multiplier = 20                                   // as a Python program's globals
struct Scale: SyncTaskFunction { func callAsFunction(_ x: Int) -> Int { x * multiplier } }
bootstrap()                                           // workers stop here and serve
let pool = try ProcessPool()
print(try pool.map(Scale(), [1, 2, 3]))               // [20, 40, 60]
