//! Benchmark workloads shared by the criterion suites and the `report` binary.
