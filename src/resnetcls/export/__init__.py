"""Writing a model directory's exported forms: ONNX / TorchScript checked against eager, int8 ONNX."""
