"""Training engine: the LightningModule, callbacks and the Trainer factory."""
