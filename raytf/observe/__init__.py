"""What a run shows while it runs: Ray metrics for the dashboard (`metrics`), the per-step
timeline (`trace`), TensorBoard events (`tensorboard`), the terminal's progress (`progress`), the
start-up clock (`startup`) and the filter for TensorFlow's native logs (`native_logs`).

May import: nothing of raytf but `raytf.errors`.
"""
