"""Real edges in: signaling from switches and probes (HEPv3/SIP, SIP pcap, ISUP, CDR files).

Every path turns its input into :class:`streams.schema.SignalingEvent` records and hands them
to :class:`services.ingest.sink.EventSink`, which produces to ``signaling.events`` (keyed by
caller, acks=all, idempotent) and sends what it cannot turn into an event to the dead-letter
topic with a reason. Nothing is dropped silently.
"""
