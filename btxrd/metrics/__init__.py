"""Classification metrics (scikit-learn) and their plots."""

from btxrd.metrics.classification import classification_metrics, plot_confusion_matrix

__all__ = ["classification_metrics", "plot_confusion_matrix"]
