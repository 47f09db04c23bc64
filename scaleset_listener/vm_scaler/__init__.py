"""The VM scaler: `loop.VMScaler` observes, `plan.plan` decides, `execute.Executor` acts, and
`ledger.Ledger` remembers every runner with its phase."""
