"""The mini-world: a small CLIP pretrained here on Fashion-MNIST, shifted few-shot tasks, first-order headroom.

No pretrained CLIP can be downloaded on the project's machines, so accuracy claims need a world we build:
`fashion` reads the data, `pretrain` trains the CLIP, `tasks` writes shifted few-shot folders and
`first_order` measures how much an autograd prompt tuner can gain on each (the ceiling for ZO methods).
"""
