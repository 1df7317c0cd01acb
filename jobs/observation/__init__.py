"""Reading how things stand: a batch's standing, usage, ETA, schedule, gauges and metrics. Changes nothing;
imports submission, scheduling and below."""

__all__: list[str] = []
