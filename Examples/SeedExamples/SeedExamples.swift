import Threading
