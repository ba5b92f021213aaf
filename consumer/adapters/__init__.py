"""The service's edges: Kafka clients (`kafka_io`), topic administration (`admin`), image fetching
(`images`, with its allow-list `allowlist`)."""
