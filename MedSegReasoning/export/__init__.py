"""Results that travel: DICOM-SEG, DICOM SR (TID 1500), Slicer ``.seg.nrrd``, NIfTI label maps, a PACS.

- ``model``: ``ExportSet``, what every writer reads (segments numbered once, for all formats);
- ``sources``: a session folder or an ``ask`` result folder -> ``ExportSet``; the source image checked again;
- ``dicom_seg`` / ``sr``: the DICOM objects through highdicom (and the SR read back);
- ``slicer_seg`` / ``nifti``: the files Slicer and research pipelines open;
- ``deidentify``: PS3.15 Annex E basic profile for the objects on their way out, remapping kept locally;
- ``pacs``: STOW-RS / QIDO-RS / WADO-RS through dicomweb-client (credentials from the environment);
- ``command``: ``medseg-reasoning export``.

Importing this package is cheap: highdicom, pydicom, SimpleITK, pynrrd and dicomweb-client load inside the
functions that need them.
"""
