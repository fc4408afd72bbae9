"""Digits with a hidden layer of 100,000 units (7.4 million values, 30 MB; with the optimizer's slots
and the exchange's buffers well over 100 MB per process): a run whose leftovers a pool host's
memory would show."""


def build_model():
    import keras

    return keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(100_000, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])
