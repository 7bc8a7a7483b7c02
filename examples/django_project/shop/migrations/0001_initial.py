from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []  # noqa: RUF012 - Django's declaration
    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="Signup",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("email", models.EmailField(max_length=254)),
                ("welcomed", models.BooleanField(default=False)),
            ],
        ),
    ]
