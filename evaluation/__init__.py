"""``cai eval``: the win rate of a trained model against its base, judged as ``cai judge`` judges."""
