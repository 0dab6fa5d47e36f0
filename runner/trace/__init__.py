"""The trace wing: what a run did, written as it happens (`writer`), read back (`reader`),
shown on a terminal (`show`) or as one HTML page (`html`), and exported as OpenTelemetry
spans (`otel`)."""
