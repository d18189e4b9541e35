"""edge-agent: MQTT edge daemon with event-time windows and store-and-forward CBOR batches."""

__version__ = "0.1.0"
__all__ = ["__version__"]
