"""PFADSeg: anomaly detection and segmentation by teacher-student distillation plus a guided segmentation network."""

__version__ = "0.1.0"
