"""Device provisioning and south-bound ingestion compatible with FIWARE IoT Agents."""
