"""The torch-free core shared by both processes: plan language, layouts, model families, catalog,
model resolution, sampling settings, run directories, similarity results and heatmaps, study plans
and the wire protocol. Nothing here imports torch, diffusers, transformers or textual (an import
contract in tests/test_imports.py enforces it)."""
