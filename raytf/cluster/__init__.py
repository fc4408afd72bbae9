"""Finding, starting and joining a Ray cluster.

Owns: the embedded local head (`local`), its record in $RAYTF_HOME (`record`), how a driver
connects (`connection`), `raytf env` / `raytf.connect` for your own tools (`attach`), Ray Jobs
(`jobs`), runs in progress for `raytf status` (`run_status`), the cluster spec that picks a
provider (`spec`), and KubeRay as the second provider (`kuberay/`).
May import: `raytf.config`, `raytf.observe`, `raytf.runtime`, `raytf.errors`.
Importing it is cheap: no Ray, no TensorFlow, no Kubernetes client until a function needs one.
"""
