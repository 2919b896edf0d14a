"""DINOv2-VPR: loop-closure verification and place recognition on frozen DINOv2 features."""
