"""churnlens: churn prediction and loyalty segmentation from customer transaction logs."""

import warnings

# pandera tries to import pyspark.pandas whenever pyspark is installed (to patch pandas typing);
# with pandas 3 that import fails after pyspark warned it does not support pandas 3, and pandera
# retries it on later imports and validations: the same warning, several times, on every command,
# even on the DuckDB engine that never touches Spark. Only that one message is silenced, before
# anything imports pandera.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

__version__ = "0.1.0"
