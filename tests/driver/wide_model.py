"""Digits with a wide hidden layer: each of its two kernels (384,000 values) is more than a piece of
the wire's pipelined sync rounds (raytf.exchange.pipeline), so both servers of a wire run use them."""


def build_model():
    import keras

    return keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(6000, activation="relu"),
                             keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, activation="softmax")])
