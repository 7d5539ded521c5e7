/// A ``Job`` seen as a function of itself, so jobs and functions share one path through the pool.
struct JobFunction<J: Job>: TaskFunction {
    func callAsFunction(_ job: J) async throws -> J.Output { try await job.run() }
}
