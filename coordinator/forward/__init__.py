"""Forwarding: feeds external trackers (MLflow, TensorBoard, W&B, Neptune) from the journal."""
