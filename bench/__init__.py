"""edge-tune's benchmarks (`edge-tune bench`), installed as `edge_tune_bench` beside the runtime.

What a query costs against PyTorch and the machine's GEMM rate (`speed`), what a run holds
(`memory`, each case in a fresh process: `process`), and what tuning gains on the mini-world tasks
(`accuracy`). The device runtime (`edge_tune`) never imports this package; it needs the [bench]
extra (onnx, for `graph_cost` and `probe`), and torch only for the PyTorch reference rows.

    graph_cost  FLOPs of the text graph, counted from its weight shapes (onnx)
    probe       the attainable GEMM rate at the text layer's shapes (onnx + ORT, numpy)
    workload    the synthetic inputs: class names, image features, shots folders
    timing      wall-clock helpers and a session wrapper that adds up the time inside ORT
    process     fresh child processes (`python -m edge_tune_bench.process`) and RSS helpers
    speed       `bench speed`        memory  `bench memory`
    grid        what `bench accuracy` runs   accuracy  the runs, their summaries and tables
    tables      the speed and memory reports as Markdown
    cli         the `edge-tune bench` click group
"""
