"""Optical flow: RAFT (torchvision) and OpenCV DIS estimators, chaining, occlusion masks, IO, pictures."""
