"""Fine-tune on GLUE MRPC with LoRA or AdaLoRA: python src/glue-mrpc.py --help"""

from adarank.pipeline import main

if __name__ == "__main__":
    main("mrpc")
