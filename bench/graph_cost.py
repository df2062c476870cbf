"""FLOPs of the text graph, counted from its weight shapes (needs onnx: the [bench] extra)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_tune.errors import EdgeTuneError


@dataclass(frozen=True)
class TextGraphCost:
    """Multiply-accumulates of the text graph, read from its weight shapes.

    Weight GEMMs upstream of the EOT gather run once per token, those downstream (the text
    projection) once per prompt; attention adds QK^T and AV, 2*L^2*d per layer.
    """

    per_token_macs: int
    per_prompt_macs: int
    layers: int
    width: int

    def macs(self, prompts: int, length: int) -> int:
        """MACs of text.onnx on `prompts` sequences of `length` tokens."""
        per_prompt = (
            length * self.per_token_macs
            + self.layers * 2 * length * length * self.width
            + self.per_prompt_macs
        )
        return prompts * per_prompt

    def flops(self, prompts: int, length: int) -> int:
        """FLOPs (2 per MAC) of text.onnx on `prompts` sequences of `length` tokens."""
        return 2 * self.macs(prompts, length)

    def shared_flops(self, candidates: int, classes: int, prefix: int, suffix: int) -> int:
        """FLOPs of text_shared.onnx: the prefix once per candidate, each class's suffix attending
        to prefix + itself (the same weights, so the same per-token cost)."""
        tokens = candidates * (prefix + classes * suffix)
        attention = (
            self.layers
            * 2
            * self.width
            * candidates
            * (prefix * prefix + classes * suffix * (prefix + suffix))
        )
        return 2 * (
            tokens * self.per_token_macs + attention + candidates * classes * self.per_prompt_macs
        )


_WEIGHT_OPS = {
    "MatMul": 1,
    "Gemm": 1,
    "MatMulInteger": 1,
    "DynamicQuantizeMatMul": 1,
    "MatMulIntegerToFloat": 1,
    "FusedMatMul": 1,
    "MatMulNBits": 1,
}
_PASS_THROUGH = {
    "Transpose",
    "Cast",
    "Identity",
    "DequantizeLinear",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
}


def text_graph_cost(onnx_path: str | Path, *, eot_input: str = "eot_index") -> TextGraphCost:
    """The text graph's MACs per token and per prompt, its layers and width, read from its
    initializers."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for node in graph.node:  # weights may also sit in Constant nodes
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    producer = {out: node for node in graph.node for out in node.output}
    per_prompt_tensors = _downstream(graph, eot_input)

    def weight_shape(name: str) -> tuple[int, ...] | None:
        for _ in range(8):
            if name in shapes:
                return shapes[name]
            node = producer.get(name)
            if node is None or node.op_type not in _PASS_THROUGH or not node.input:
                return None
            name = node.input[0]
        return None

    per_token = per_prompt = 0
    for node in graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
            continue
        shape = weight_shape(node.input[_WEIGHT_OPS[node.op_type]])
        if shape is None or len(shape) != 2:
            continue  # activation x activation (attention) is counted from the formula
        macs = int(shape[0]) * int(shape[1])
        if node.op_type == "MatMulNBits":
            continue
        if node.output[0] in per_prompt_tensors:
            per_prompt += macs
        else:
            per_token += macs
    layers = sum(1 for node in graph.node if node.op_type == "Softmax")
    layers = layers or sum(1 for node in graph.node if node.op_type == "Attention")
    width = _text_width(graph)
    return TextGraphCost(per_token, per_prompt, layers, width)


def mlp_width(cost: TextGraphCost) -> int:
    """The MLP width from per-token MACs: each layer does 4·D² (q, k, v, out) + 2·D·H."""
    per_layer = cost.per_token_macs / max(1, cost.layers)
    return max(1, round((per_layer - 4 * cost.width**2) / (2 * cost.width)))


def _downstream(graph: Any, source: str) -> set[str]:
    """Every tensor whose values depend on `source` (shape-only edges excluded; ONNX order is
    topological)."""
    reached = {source}
    for node in graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        if any(name in reached for name in node.input):
            reached.update(node.output)
    reached.discard(source)
    return reached


def _text_width(graph: Any) -> int:
    """D, the static last dimension of the graph's prompt_embeds input."""
    for value in graph.input:
        if value.name == "prompt_embeds":
            dims = value.type.tensor_type.shape.dim
            if dims and dims[-1].dim_value:
                return int(dims[-1].dim_value)
    raise EdgeTuneError(
        "text graph has no prompt_embeds input with a static width",
        hint="re-export the bundle with `edge-tune export`",
    )
