"""TensorFlow adapters: tf.nn, the TF1 graph APIs, tf-slim, tf_keras, with shared helpers in common/graph/keras_common."""
