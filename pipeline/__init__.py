"""dvcm workflow: prepare shards, train and sweep rate points, evaluate them (Ray + MLflow)."""
