"""Pre- and post-processing by modality, numpy only (and Pillow for images): the steps between what a user
sends and the model's tensors, and between the model's outputs and finished results.

``torchship predict`` runs these steps, and ``torchship triton`` copies this package, as it is, into every
Python model it writes (``REPO/<model>/1/torchship_processing/``), so a served model answers what ``predict``
prints. Its modules import numpy, each other (relatively, so the copy works under its own name), and only
the packages the served environment carries (``serving/environment.py``); nothing else of torchship.

A modality module (``text.py``, ``image.py``; ``audio.py`` next) provides that modality's own steps:
decoded inputs to one batch of the model's feeds, and the model's outputs back to one result per input
(text: token ids to padded feeds, pooling over tokens; images: the checkpoint's image processor as
``ImageSettings``, decoded images to ``pixel_values``, ``image_files.py`` decoding the bytes). Steps every
modality shares live once in ``heads.py`` (class scores and their labels, embeddings of unit length). A task
that reads a modality's own units has its own module (text: ``entities.py``, ``fill_mask.py``,
``answers.py``). A new modality adds its module and its tasks' steps, and reuses the rest.
"""
