"""churnlens: churn prediction and loyalty segmentation from customer transaction logs."""

__version__ = "0.1.0"
