"""JFT-style multi-label image data for vit22b_pax.

The data format (TFRecord shards of tf.Example, a class file with a label
hierarchy, a dataset info file) is described in data/README.md. Modules:

  data_format   file names, tf.Example keys, dataset info, DATA_DIR checks
  hierarchy     the class DAG: reading/writing the class file, ancestors
  stats         label frequencies and the chance-level mAP
  preprocessing TF ops: decode, hierarchy expansion, multi-hot, crops
  tasks         the registered seqio Task of a dataset directory
  praxis_input  the praxis BaseInput the experiments' datasets() use
  resumable     global batches started at the restored step, host rows
  synthetic     in-memory synthetic images and the input specs (no files)
  writer        sharded TFRecord writer used by the converters
  converters    CSV and Open Images layouts -> the format
  shapes        the embedded generated dataset (coloured shapes)
"""
