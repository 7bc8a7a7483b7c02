from django.urls import path
from shop import views

urlpatterns = [
    path("signup", views.signup),
    path("tasks/<str:result_id>", views.task_result),
]
