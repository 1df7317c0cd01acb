"""Reading how things stand: a batch's standing, usage, ETA, schedule, gauges and metrics. Changes nothing."""

__all__: list[str] = []
