"""The pyfunc model, as MLflow logs it from code ("models from code"): this file is stored
beside each registered version and run when MLflow loads the version, instead of a pickled
object (:func:`trainer.registry.log_model`)."""

from mlflow.models import set_model

from trainer.registry import GeotuneModel

set_model(GeotuneModel())
