; Inside braces, brackets and parentheses one level deeper; the closer goes back.
[
  (model_declaration)
  (stage_declaration)
  (augment_declaration)
  (onnx_source)
  (residual)
  (settings)
  (metric_list)
  (list)
  (call)
  (call_expression)
  (loss_declaration)
] @indent.begin
["}" "]" ")"] @indent.branch @indent.end
