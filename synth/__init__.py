"""Synthetic driving world: procedural driving videos with exact flow, depth and labels.

``render_video(seed, frames, size=(W, H), fps=10.0)`` renders one video in memory (see
:class:`synth.world.Video`); ``write_dataset(out_dir, SynthConfig(...))`` writes the
BDD100K / flow / Cityscapes layouts described in :mod:`synth.writers`;
``ExactCorrespondence`` gives positive pairs from the world's exact geometry. The world's parts
(camera, scene, ray casting, textures, shading, ground truth) are listed in :mod:`synth.world`.
"""

from synth.constants import LABEL_IDS, LABEL_NAMES, SKY_DEPTH
from synth.correspondence import ExactCorrespondence
from synth.world import Frame, Renderer, Video, render_video
from synth.writers import SynthConfig, read_video, video_name, video_seed, write_dataset

__all__ = [
    "ExactCorrespondence",
    "LABEL_IDS",
    "LABEL_NAMES",
    "SKY_DEPTH",
    "Frame",
    "Renderer",
    "Video",
    "render_video",
    "SynthConfig",
    "write_dataset",
    "read_video",
    "video_name",
    "video_seed",
]
