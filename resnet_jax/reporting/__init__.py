"""What runs leave for people: results and report.md, metric writers (TensorBoard, JSON lines),
Grad-CAM, and a sweep's tables and figures. Receives what it reports; imports nothing of training."""
