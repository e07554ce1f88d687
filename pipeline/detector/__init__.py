"""Stage ``train-detector``: a narrow YOLOv3 trained on the synthetic world (:mod:`pipeline.data.world`)
on Ray Train, written as a Darknet ``.cfg`` + ``.weights`` pair with its provenance."""
