"""Object detection: boxes in, boxes out (the task ``detect``, :mod:`~liandan.tasks.detect.task`).

The foundations the detect task stands on, each importable on its own:

- :mod:`liandan.tasks.detect.boxes`: the in-memory boxes of one image
  (:class:`~liandan.tasks.detect.boxes.ImageBoxes`, absolute pixel ``x1 y1 x2 y2``),
  the checks that name every bad file and line, and the box statistics of a dataset's
  fingerprint;
- :mod:`liandan.tasks.detect.formats`: readers for YOLO text labels
  (:mod:`~liandan.tasks.detect.yolo`), COCO JSON (:mod:`~liandan.tasks.detect.coco`)
  and Pascal VOC XML (:mod:`~liandan.tasks.detect.voc`);
- :mod:`liandan.tasks.detect.metrics`: COCO-style mAP (the matching in
  :mod:`~liandan.tasks.detect.matching`; both checked against pycocotools), precision /
  recall / F1 at a score threshold and a confusion matrix with a background row and
  column.

The task registry imports :mod:`~liandan.tasks.detect.task` only; this package imports
nothing heavy.
"""
