"""The mesh's back-end services: auth, router, inference, anomaly."""
