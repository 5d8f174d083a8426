"""Running the models through OpenVINO or ONNX Runtime instead of torch.

Each model is exported once (torch → ONNX, then ONNX → OpenVINO IR), checked
against torch on fixed inputs, and kept in the export cache; later starts load
the export.

- ``choice``: which backends to try, and the fallback to torch;
- ``cache``: the export cache (atomic writes, checksummed manifests);
- ``fidelity``: the fixed inputs and the thresholds an export must meet;
- ``graph``, ``runtimes``, ``onnx``, ``openvino``: a module to export, and
  writing and running it with each runtime;
- ``embedding``, ``seq2seq``: sentence-transformers models, and T5.

Telemetry of both runtimes is switched off in ``inference/__init__.py``,
before either is imported.
"""
