"""Where images come from and how they reach the step: each source read into arrays, the splits,
normalisation and epoch order, host batches, and augmentation and mixup on the device."""
