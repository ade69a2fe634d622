; Blocks fold: every declaration with braces, settings blocks, residual blocks.
[
  (model_declaration)
  (stage_declaration)
  (augment_declaration)
  (onnx_source)
  (residual)
  (settings)
  (metric_list)
  (loss_declaration)
] @fold
