"""Running a model directory: the Predictor, ONNX Runtime / OpenVINO sessions, Grad-CAM."""
