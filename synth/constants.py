"""The world's shared numbers: Cityscapes label ids, street dimensions, clipping distances, sky depth."""

from __future__ import annotations

# Cityscapes label ids (cityscapesScripts labels.py).
LABEL_UNLABELED = 0
LABEL_ROAD = 7
LABEL_SIDEWALK = 8
LABEL_BUILDING = 11
LABEL_POLE = 17
LABEL_VEGETATION = 21
LABEL_SKY = 23
LABEL_CAR = 26
LABEL_IDS = (LABEL_ROAD, LABEL_SIDEWALK, LABEL_BUILDING, LABEL_POLE, LABEL_VEGETATION, LABEL_SKY, LABEL_CAR)
LABEL_NAMES = {7: "road", 8: "sidewalk", 11: "building", 17: "pole", 21: "vegetation", 23: "sky", 26: "car"}

SKY_DEPTH = 1.0e4  # metres stored in ``depth`` for sky pixels (the sky itself is at infinity)
FAR = 3000.0  # ground hits beyond this distance (a fraction of a pixel under the horizon) count as sky
NEAR = 0.05  # metres; nothing is hit closer than this
ROAD_HALF = 7.0  # half-width of the road (2 lanes of 3.5 m per direction)
LANE_W = 3.5  # lane width, metres
