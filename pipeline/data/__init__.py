"""CIFAR-10: its sources (pickled batches, image folders, archives), the decoded uint8 cache and
batched crop+flip augmentation on the device.
May import: nothing in pipeline."""
