"""Video networks: models that read a video as a sequence of frames (today I3D,
`i3d.py`, DeepMind's Inflated 3D ConvNet with its Kinetics-400 weights, read safely by
`numpy_pickle.py`), their clip reading (consecutive frames from a video's middle,
`i3d.read_clip`), and temporal heads that classify a video from its per-step vectors
(`heads.py`).

Not imported by `modrec.content` itself: a network is loaded only by who asks for it.
The frame-sampling video *encoder* of ``modrec embed`` is `modrec.content.encoders.video`;
all decoding goes through `modrec.content.media`.
"""
